# One image for both services; the container's SERVICE_APP says which one it runs:
#   SERVICE_APP="patient_service.app:create_app()"    or    "therapist_service.app:create_app()"
# The same image runs the migrations (`flask --app <service> db upgrade`), see docker-compose.yml.
FROM python:3.11-slim

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PIP_ROOT_USER_ACTION=ignore

WORKDIR /app

# The dependencies exactly as pinned in pyproject.toml, in a layer of their own: it is rebuilt only
# when the pins change. The code runs from /app (gunicorn and flask import it from the working
# directory), so the migrations stay beside it.
COPY pyproject.toml ./
RUN python -c "import tomllib; print('\n'.join(tomllib.load(open('pyproject.toml', 'rb'))['project']['dependencies']))" \
        > /tmp/requirements.txt \
    && pip install -r /tmp/requirements.txt \
    && rm /tmp/requirements.txt

COPY gunicorn.conf.py ./
COPY shared ./shared
COPY patient_service ./patient_service
COPY therapist_service ./therapist_service
COPY migrations ./migrations

# A user of its own, and the folders it writes to (volumes mounted there inherit the owner).
RUN groupadd --system --gid 10001 curavani \
    && useradd --system --uid 10001 --gid curavani --home-dir /app --no-create-home --shell /usr/sbin/nologin curavani \
    && mkdir -p /var/lib/curavani/patient-backup /var/lib/curavani/outbox \
    && chown -R curavani:curavani /var/lib/curavani
USER curavani

# Metrics of all workers are added up through files in a private temporary folder that
# gunicorn.conf.py makes per master (PROMETHEUS_MULTIPROC_DIR, when set, names it instead).
ENV HOST=0.0.0.0 \
    ALERT_OUTBOX_DIR=/var/lib/curavani/outbox
EXPOSE 5001 5002

# gunicorn.conf.py reads the bind address, workers, threads and the app (SERVICE_APP) from the
# environment; the tests start the service with this very command (tests/ops/test_gunicorn.py).
CMD ["gunicorn", "-c", "gunicorn.conf.py"]
