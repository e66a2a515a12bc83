"""The running product: configuration (model, file, options), the
``twisted.application`` services built from it, worker processes, the
control socket, logs and the ``smtppeer`` admin command."""
