"""Appointments from practice calendars (SPEC §6.5): latest wins on `updatedAt`, no overlaps per
organisation (an exclusion constraint), versions, as-of reads and batch requests."""
