"""The therapist service: therapists and the folder importer for the weekly scrape."""
from therapist_service.app import create_app

__all__ = ["create_app"]
