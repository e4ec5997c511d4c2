"""The Flask extensions, created once and bound to each app with `init_app`."""
from typing import TYPE_CHECKING

from flask_sqlalchemy import SQLAlchemy
from sqlalchemy.orm import DeclarativeBase


class Base(DeclarativeBase):
    pass


# expire_on_commit=False: a view serialises the object its unit of work just committed
# without a second round trip.
db = SQLAlchemy(model_class=Base, session_options={"expire_on_commit": False})

# The base class of every table: `db.Model`. Type checkers cannot take a class from an attribute
# (python/mypy#8603), so they see it as what it is, our declarative `Base`.
if TYPE_CHECKING:
    class Model(Base):
        __abstract__ = True
else:
    Model = db.Model
