"""Dropin: makes the ``csv`` audit sink visible to ``twisted.plugin.getPlugins``."""

from yatagarasu_csvsink import CsvSinkFactory

csvsink = CsvSinkFactory()
