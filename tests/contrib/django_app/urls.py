from __future__ import annotations

from django.urls import include, path, re_path

from . import views

api = [path("items/<slug:name>/", views.item)]

urlpatterns = [
    path("users/<int:pk>/", views.user),
    path("async/users/<int:pk>/", views.async_user),
    re_path(r"^legacy/(?P<pk>[0-9]+)/$", views.legacy),
    path("api/v1/", include(api)),
    path("boom/", views.boom),
    path("missing/<int:pk>/", views.missing),
    path("stream/", views.stream),
    path("astream/", views.astream),
    path("file/", views.file),
    # tests/contrib/test_excluded_urls.py
    path("health/live/", views.probe),
    path("ping/", views.probe),
    path("work/", views.probe),
]
