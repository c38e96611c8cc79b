"""twistd plugin: ``twistd yatagarasu``. Lazy: nothing of yatagarasu is imported until used."""

from twisted.application.service import ServiceMaker

yatagarasu = ServiceMaker(
    "yatagarasu",
    "yatagarasu.tap",
    "Read-only HTTP proxy for S3-compatible object stores",
    "yatagarasu",
)
