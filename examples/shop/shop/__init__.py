"""The example shop: a users service and a billing service (see ../bootstrap.py)."""
