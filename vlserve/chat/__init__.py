"""What a chat is, independent of HTTP and of llama.cpp: the request and answer shapes and
their validation (`protocol`, its fields declared once in `fields` for the parser and the
OpenAPI document; `constraint`: a response_format compiled to a grammar; `tools`: tools and
tool_choice checked and compiled to the calls' grammar); a conversation turned into a prompt
(`prompt`: earlier thinking stripped, fitted to the context by `context`, rendered by the
model's template (`template`, tools included) and tokenized through the `PromptModel`
interface the engine implements; images checked and prepared by `images`, fetched by
`remote` when allowed); and generated tokens turned into an answer (`textstream`: bytes to
text and stop strings; `answer` and `reasoning`: the reasoning apart from the content, and
`tools`' reader: the calls apart from the text).

May import: `errors` only. A model is reached through the interface declared here, never
imported.
"""
