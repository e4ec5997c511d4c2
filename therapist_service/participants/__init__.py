"""Appointment participants (SPEC §6.6): people sent in batches by an upstream job, matched by
their id or an alias, else by first name + last name + e-mail; a MID is never shared."""
