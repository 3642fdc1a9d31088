"""The settlement core that the gateway and the processor both stand on.

The event contracts and their factories (`events`), the settlement rules and calendars (`rules`), ids,
the error root, the settings base, logging, topic creation, and the ledger: the PostgreSQL schema the
processor writes and the read model the status API reads (`ledger`). It imports nothing of either side;
`fastcore`, the compiled floor, is the only package below it.
"""
