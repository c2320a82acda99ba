"""OpenTelemetry spans and metrics for a chain (needs ``pip install 'fallbackchain[otel]'``).

::

    from fallbackchain import FallbackChain
    from fallbackchain.otel import OpenTelemetryListener

    chain = FallbackChain.from_config(path, listeners=[OpenTelemetryListener()])

``import fallbackchain`` never imports OpenTelemetry; importing this module without
``opentelemetry-api`` installed raises an ``ImportError`` naming the extra to install.
"""

from ._otel import OpenTelemetryListener

__all__ = ["OpenTelemetryListener"]
