"""Model management: the catalog of known models (`catalog`, `catalog.toml`), the models
on disk and their pairing (`disk`, `ggufmeta` for GGUF headers), downloads from the Hub
(`hub`), GPU memory and offload planning (`gpu`) and the start-up choice (`startup`).
(Named `library`, not `models`, which is the folder where the weights live.)

May import: `errors` only.
"""
