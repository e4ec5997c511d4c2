"""The Flask extensions, created once and bound to each app with `init_app`."""
from flask_sqlalchemy import SQLAlchemy
from sqlalchemy.orm import DeclarativeBase


class Base(DeclarativeBase):
    pass


# expire_on_commit=False: a view serialises the object its unit of work just committed
# without a second round trip.
db = SQLAlchemy(model_class=Base, session_options={"expire_on_commit": False})
