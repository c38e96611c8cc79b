"""
Plugin dropins for ``twisted.plugin.getPlugins``: built-in ones live here, and any installed
distribution can add modules to ``yatagarasu/plugins/`` (this package's ``__path__`` is
extended with every such directory on ``sys.path``).
"""

from twisted.plugin import pluginPackagePaths

__path__.extend(pluginPackagePaths(__name__))
__all__: list[str] = []
