"""Pure logic of imgnb: statuses, ordering, positions, retries, leases, validation.

Nothing here does I/O or imports the rest of imgnb, so every rule can be unit-tested alone.
"""
