"""The browser pages' static files, served by app/routes/ui.py."""
