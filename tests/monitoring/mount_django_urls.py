"""A Django URLconf with the monitoring endpoints mounted (tests/monitoring/test_mount.py)."""

from pulsetrace.monitoring.mount import django_urls

urlpatterns = django_urls()
