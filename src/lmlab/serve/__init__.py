"""`lmlab serve`: an OpenAI-compatible HTTP server for one model, with continuous batching, and one web page.

    lmlab serve runs/gpt2-tiny [--host 127.0.0.1] [--port 8000] [--api-key KEY]

- `app.py`: the routes (Starlette on uvicorn), keys, limits, server-sent events, the page;
- `protocol.py`: request bodies in OpenAI's layout, type- and range-checked, one-line errors;
- `engine.py`: the model's thread: continuous batching (lmlab.generate.batching) with a decoding rule
  per request (lmlab.generate.sampling.DecodeRule), and the other model work;
- `completions.py`: streamed chunks and whole responses; `codec.py`: the API's strings for a tokenizer,
  and text that never splits a character or shows a stop string;
- `midi.py`: the music parts (piano roll notes and MIDI files) for models with a MIDI tokenizer;
- `server.py`: `ServeOptions` and `serve_command`; `static/`: the page (docs/serve.md shows it).
"""
