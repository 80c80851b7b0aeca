"""The demo: a synthetic retailer (`retailer`), local message sinks (`sinks`) and the HTML report (`report`).

`loyalty run` (suite/cli.py) wires them: start the sinks, point the notifier at them, start the services,
publish the retailer's stream (with the optional customer simulator answering surveys and resolving cases),
then render the report from what reached Kafka and the sinks.
"""
