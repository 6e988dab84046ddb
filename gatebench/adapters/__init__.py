"""Adapter families: the user's per-width spatial adapter (``user.py``) and diffusers' GLIGEN
fusers (``gligen.py``); ``families.py`` lists them. Import each name from its module."""
