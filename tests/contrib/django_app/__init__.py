"""A minimal Django project for the integration tests, configured in-process."""

from __future__ import annotations

SETTINGS = {
    "DEBUG": False,
    "SECRET_KEY": "pulsetrace-tests",
    "ALLOWED_HOSTS": ["testserver"],
    "ROOT_URLCONF": f"{__name__}.urls",
    "MIDDLEWARE": [
        "django.middleware.common.CommonMiddleware",
        f"{__name__}.middleware.ShortCircuitMiddleware",
    ],
    "INSTALLED_APPS": [],
    "DATABASES": {},
    "USE_TZ": True,
}


def setup() -> None:
    """Configure Django once per process (settings cannot be configured twice)."""
    import django
    from django.conf import settings

    if not settings.configured:
        settings.configure(**SETTINGS)
        django.setup()
