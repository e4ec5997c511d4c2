"""The patient service: patients, their consents and registrations, and the bucket importer."""
from patient_service.app import create_app

__all__ = ["create_app"]
