"""The plugins that ship with Dispatch Engine, registered from `plugins.DEFAULT_PLUGINS`.

Each is an ordinary plugin: it imports only `dispatch_engine.plugin`, its hooks are
`trylast`, and a user plugin of the same name replaces it.
"""
