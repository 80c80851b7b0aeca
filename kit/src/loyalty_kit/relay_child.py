"""``python -m loyalty_kit.relay_child``: the outbox relay's child process (see ``loyalty_kit.relay_process``).

A module of its own because ``loyalty_kit`` imports ``relay_process`` already, and running an imported module
with ``-m`` executes it twice.
"""

from loyalty_kit.relay_process import main

if __name__ == "__main__":
    main()
