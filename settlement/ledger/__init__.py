"""The ledger: the settlement state in PostgreSQL. Its schema (`migrations/`, applied by the processor,
which writes it) and its read model (`read_model`, the queries the gateway's status API and intake ask),
side by side so that a change of a table and of the queries over it are one change."""
