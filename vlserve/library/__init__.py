"""Model management: the catalog of known models (`catalog`, `catalog.toml`), the models
on disk and their pairing (`disk`, `ggufmeta` for GGUF headers), downloads from the Hub
(`hub`), GPU memory and offload planning (`gpu`), the start-up choice (`startup`), where
models go when no folder is given (`places`) and the generated tiny random-weight model of
the demo, the tests and the benchmark (`tinymodel`).
(Named `library`, not `models`, which is the folder where the weights live.)

May import: `errors` only.
"""
