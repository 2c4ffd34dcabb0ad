"""What a chat is, independent of HTTP and of llama.cpp: the request protocol and its
validation (`protocol`); a conversation turned into a prompt (`prompt`: thinking stripped,
fitted to the context, rendered by the model's template (`template`), images prepared
(`images`, `remote`)); and generated tokens turned into an answer (`textstream`: bytes to
text and stop strings; `reasoning`: the thinking split).

May import: `errors` only. A model is reached through the small interface declared here
(what tokenizes and counts image tokens), never imported.
"""
