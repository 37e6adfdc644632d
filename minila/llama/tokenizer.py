"""Text <-> token ids: one small interface over the two tokenizer files Llamas ship.

- `tokenizer.json` (byte-level BPE and friends), run by the `tokenizers` library exactly
  as the file describes: its pre-tokenizer, its post-processor (which decides whether a
  BOS is added), its added tokens.
- `tokenizer.model` (a sentencepiece model, Llama-2 style), run by `sentencepiece`.
  A BOS is added when tokenizer_config.json says `add_bos_token` (default True), an
  EOS when it says `add_eos_token` (default False). Special-token strings such as
  "<s>" are cut out of the text first and map to their ids; each piece of text between
  them is encoded by sentencepiece on its own (so it gets sentencepiece's dummy-prefix
  space, which is what Meta's Llama-2 code does and what HF calls `legacy=True`).

The chat template is the jinja2 template from the folder (`chat_template.jinja`, or
`chat_template` in tokenizer_config.json), rendered the way transformers renders it.
Without a template, `apply_chat_template` falls back to plain text: the message
contents joined by blank lines, encoded with the tokenizer's usual special tokens.
"""

from __future__ import annotations

import json
from datetime import datetime
from pathlib import Path
from typing import Iterable, Protocol

from minila.errors import MinilaError
from minila.llama.files import broken, config_value, first_line, read_json, read_text


def _token_text(token: str | dict | None, path: Path, name: str) -> str | None:
    """tokenizer_config.json writes a special token as a string or as an AddedToken dict."""
    text = token.get("content") if isinstance(token, dict) else token
    if text is not None and not isinstance(text, str):
        raise broken(path, f"{name} is {token!r}, but must be a token's text or {{\"content\": text}}")
    return text


# ------------------------------------------------------------------------- backends


class _Backend(Protocol):
    def encode(self, text: str, add_special_tokens: bool) -> list[int]: ...
    def decode(self, ids: list[int], skip_special_tokens: bool) -> str: ...
    def token_to_id(self, token: str) -> int | None: ...
    def builtin_special_tokens(self) -> dict[str, str]: ...
    @property
    def vocab_size(self) -> int: ...


class _HFBackend:
    """A `tokenizer.json`, run as written."""

    def __init__(self, path: Path) -> None:
        from tokenizers import Tokenizer as HFTokenizer

        try:
            self._tok = HFTokenizer.from_file(str(path))
        except Exception as e:  # noqa: BLE001 - the Rust library raises a bare Exception for any bad file
            raise broken(path, f"not a tokenizer the tokenizers library can read ({first_line(e)})") from None

    def encode(self, text: str, add_special_tokens: bool) -> list[int]:
        return self._tok.encode(text, add_special_tokens=add_special_tokens).ids

    def decode(self, ids: list[int], skip_special_tokens: bool) -> str:
        return self._tok.decode(list(ids), skip_special_tokens=skip_special_tokens)

    def token_to_id(self, token: str) -> int | None:
        return self._tok.token_to_id(token)

    def builtin_special_tokens(self) -> dict[str, str]:
        return {}  # tokenizer.json names none: tokenizer_config.json does

    @property
    def vocab_size(self) -> int:
        return self._tok.get_vocab_size(with_added_tokens=True)


class _SentencePieceBackend:
    """A `tokenizer.model`, plus the special tokens that sentencepiece itself would not
    recognise inside text (BOS/EOS/UNK and tokenizer_config's `added_tokens_decoder`)."""

    def __init__(self, path: Path, tok_config: dict, config_path: Path) -> None:
        import sentencepiece

        try:
            self._sp = sentencepiece.SentencePieceProcessor(model_file=str(path))
        except Exception as e:  # noqa: BLE001 - sentencepiece raises RuntimeError or OSError, by version
            raise broken(path, f"not a sentencepiece model ({first_line(e)})") from None
        if self._sp.get_piece_size() == 0:
            raise broken(path, "a sentencepiece model without pieces")
        self._add_bos = config_value(tok_config, "add_bos_token", bool, config_path, True)
        self._add_eos = config_value(tok_config, "add_eos_token", bool, config_path, False)
        self.special: dict[str, int] = {}  # text -> id
        for i in (self._sp.bos_id(), self._sp.eos_id(), self._sp.unk_id()):
            if i >= 0:
                self.special[self._sp.id_to_piece(i)] = i
        for i, tok in (config_value(tok_config, "added_tokens_decoder", dict, config_path) or {}).items():
            text = _token_text(tok, config_path, f"added_tokens_decoder[{i!r}]")
            if not str(i).isdigit() or not text:
                raise broken(config_path, f"added_tokens_decoder maps {i!r} to {tok!r}; keys must be token ids")
            self.special[text] = int(i)
        self._special_text = {i: t for t, i in self.special.items()}
        # longest first, so "<s>" never wins over a longer token that starts with it
        self._split_order = sorted(self.special, key=len, reverse=True)

    def _split(self, text: str) -> list[str | int]:
        """Cut text into plain strings and special-token ids, left to right."""
        parts: list[str | int] = []
        start = i = 0
        while i < len(text):
            hit = next((t for t in self._split_order if text.startswith(t, i)), None)
            if hit is None:
                i += 1
                continue
            if i > start:
                parts.append(text[start:i])
            parts.append(self.special[hit])
            i = start = i + len(hit)
        if start < len(text):
            parts.append(text[start:])
        return parts

    def encode(self, text: str, add_special_tokens: bool) -> list[int]:
        ids = [self._sp.bos_id()] if add_special_tokens and self._add_bos else []
        for part in self._split(text):
            ids.extend([part] if isinstance(part, int) else self._sp.encode(part))
        if add_special_tokens and self._add_eos:
            ids.append(self._sp.eos_id())
        return ids

    def decode(self, ids: list[int], skip_special_tokens: bool) -> str:
        # sentencepiece drops control tokens when decoding, so decode runs of ordinary
        # ids and write special ids out ourselves (as transformers does)
        out: list[str] = []
        run: list[int] = []
        for i in ids:
            if i in self._special_text:
                out.append(self._sp.decode(run))
                run = []
                if not skip_special_tokens:
                    out.append(self._special_text[i])
            else:
                run.append(i)
        out.append(self._sp.decode(run))
        return "".join(out)

    def builtin_special_tokens(self) -> dict[str, str]:
        """The model file's own BOS/EOS/UNK pieces, for configs that do not name them."""
        sp = self._sp
        ids = {"bos_token": sp.bos_id(), "eos_token": sp.eos_id(), "unk_token": sp.unk_id()}
        return {name: sp.id_to_piece(i) for name, i in ids.items() if i >= 0}

    def token_to_id(self, token: str) -> int | None:
        if token in self.special:
            return self.special[token]
        i = self._sp.piece_to_id(token)
        return None if i == self._sp.unk_id() and token != self._sp.id_to_piece(i) else i

    @property
    def vocab_size(self) -> int:
        return max(self._sp.get_piece_size(), max(self._special_text, default=-1) + 1)


# ------------------------------------------------------------------------- chat template


def _jinja_env():
    """The jinja2 environment transformers renders chat templates in: sandboxed,
    trim_blocks + lstrip_blocks, loop controls, its tojson, raise_exception and
    strftime_now, and the `{% generation %}` block (a marker for training; it renders
    its body unchanged)."""
    import jinja2
    from jinja2.ext import Extension
    from jinja2.sandbox import ImmutableSandboxedEnvironment

    class GenerationBlock(Extension):
        tags = {"generation"}

        def parse(self, parser):
            lineno = next(parser.stream).lineno
            body = parser.parse_statements(("name:endgeneration",), drop_needle=True)
            return jinja2.nodes.CallBlock(self.call_method("_body"), [], [], body).set_lineno(lineno)

        def _body(self, caller) -> str:
            return caller()

    def raise_exception(message: str) -> None:
        raise jinja2.exceptions.TemplateError(message)

    def tojson(x, ensure_ascii=False, indent=None, separators=None, sort_keys=False) -> str:
        return json.dumps(x, ensure_ascii=ensure_ascii, indent=indent, separators=separators, sort_keys=sort_keys)

    env = ImmutableSandboxedEnvironment(
        trim_blocks=True, lstrip_blocks=True, extensions=[GenerationBlock, "jinja2.ext.loopcontrols"]
    )
    env.filters["tojson"] = tojson
    env.globals["raise_exception"] = raise_exception
    env.globals["strftime_now"] = lambda fmt: datetime.now().strftime(fmt)
    return env


def compile_chat_template(template: str, source: str = "the chat template"):
    """A compiled jinja2 template; a syntax error is a MinilaError naming `source`."""
    import jinja2

    try:
        return _jinja_env().from_string(template)
    except jinja2.exceptions.TemplateSyntaxError as e:
        raise MinilaError(
            f"{source}: the chat template is not valid jinja ({e.message}, template line {e.lineno}); "
            "fix it or copy the model's original tokenizer files"
        ) from None


def render_chat_template(
    template, messages: list[dict], add_generation_prompt: bool, **special: str | None
) -> str:
    """Render a chat template (text, or from `compile_chat_template`) the way transformers does."""
    if isinstance(template, str):
        template = compile_chat_template(template)
    try:
        return template.render(messages=messages, add_generation_prompt=add_generation_prompt, **special)
    except Exception as e:  # noqa: BLE001 - a template is a program from the checkpoint: any failure is its verdict
        raise MinilaError(f"the chat template rejected these messages: {first_line(e)}") from None


def _find_chat_template(folder: Path, tok_config: dict, config_path: Path) -> tuple[str, str] | tuple[None, None]:
    """(template text, where it came from), or (None, None)."""
    jinja_file = folder / "chat_template.jinja"  # where newer transformers versions save it
    if jinja_file.is_file():
        return read_text(jinja_file), str(jinja_file)
    template = tok_config.get("chat_template")
    if isinstance(template, list):  # several named templates: use the default one
        if not all(isinstance(t, dict) and isinstance(t.get("template"), str) for t in template):
            raise broken(config_path, "chat_template is a list whose entries are not {name, template} objects")
        template = {t.get("name"): t["template"] for t in template}.get("default")
    if template is not None and not isinstance(template, str):
        raise broken(config_path, f"chat_template is a JSON {type(template).__name__}, not the template's text")
    return (template, str(config_path)) if template is not None else (None, None)


def _ids(config: dict, path: Path, key: str) -> list[int]:
    """A token id field (one id, a list of ids, or absent) as a list of ids."""
    value = config.get(key)
    values = value if isinstance(value, list) else [] if value is None else [value]
    if not all(isinstance(i, int) and not isinstance(i, bool) and i >= 0 for i in values):
        raise broken(path, f"{key} is {value!r}, but must be a token id or a list of token ids")
    return values


# ------------------------------------------------------------------------- the interface


class Tokenizer:
    """encode/decode, the special ids a decoder needs, and the chat template."""

    def __init__(
        self,
        backend: _Backend,
        *,
        bos_id: int | None,
        eos_ids: list[int],
        chat_template: str | None,
        special_tokens: dict[str, str | None],
        kind: str,
        template_source: str | None = None,
    ) -> None:
        self._backend = backend
        self.bos_id = bos_id
        self.eos_ids = eos_ids
        self.chat_template = chat_template
        # compiled once, now: a broken template fails at load time, naming its file
        self._template = None if chat_template is None else compile_chat_template(
            chat_template, template_source or "the chat template"
        )
        self._special_tokens = special_tokens  # names the template may use: bos_token, eos_token, ...
        self.kind = kind  # "tokenizer.json" or "sentencepiece"

    @classmethod
    def from_folder(cls, folder: str | Path) -> Tokenizer:
        folder = Path(folder)
        tok_path, gen_path, model_path = (folder / n for n in ("tokenizer_config.json", "generation_config.json", "config.json"))
        tok_config, gen_config, model_config = read_json(tok_path), read_json(gen_path), read_json(model_path)

        if (folder / "tokenizer.json").is_file():
            backend: _Backend = _HFBackend(folder / "tokenizer.json")
            kind = "tokenizer.json"
        elif (folder / "tokenizer.model").is_file():
            backend = _SentencePieceBackend(folder / "tokenizer.model", tok_config, tok_path)
            kind = "sentencepiece"
        else:
            raise MinilaError(
                f"no tokenizer in {folder}: expected tokenizer.json or tokenizer.model; "
                "copy the tokenizer files of the checkpoint into this folder"
            )

        names = ("bos_token", "eos_token", "unk_token", "pad_token")
        special = {name: _token_text(tok_config.get(name), tok_path, name) for name in names}
        for name, text in backend.builtin_special_tokens().items():  # e.g. sentencepiece's own "<s>"
            if special[name] is None:
                special[name] = text
        if special["bos_token"] is not None:
            bos_id = backend.token_to_id(special["bos_token"])
        else:  # fall back to the id in the model's configs
            bos_id = _ids(gen_config, gen_path, "bos_token_id") or _ids(model_config, model_path, "bos_token_id")
            bos_id = bos_id[0] if bos_id else None

        # every id that ends generation: Llama 3's configs list several (end of text, of turn,
        # of a tool message); all of them stop decoding, then the tokenizer's eos token
        eos_ids: list[int] = []
        for i in _ids(gen_config, gen_path, "eos_token_id") + _ids(model_config, model_path, "eos_token_id"):
            if i not in eos_ids:
                eos_ids.append(i)
        if special["eos_token"] is not None:
            i = backend.token_to_id(special["eos_token"])
            if i is not None and i not in eos_ids:
                eos_ids.append(i)

        template, source = _find_chat_template(folder, tok_config, tok_path)
        return cls(
            backend,
            bos_id=bos_id,
            eos_ids=eos_ids,
            chat_template=template,
            special_tokens=special,
            kind=kind,
            template_source=source,
        )

    @property
    def vocab_size(self) -> int:
        return self._backend.vocab_size

    def encode(self, text: str, add_special_tokens: bool = True) -> list[int]:
        """Token ids of `text`. Special-token strings in the text become their ids.
        `add_special_tokens` adds what the tokenizer adds around a text (e.g. Llama-2's BOS)."""
        return self._backend.encode(text, add_special_tokens)

    def decode(self, ids: Iterable[int], skip_special_tokens: bool = False) -> str:
        return self._backend.decode(list(ids), skip_special_tokens)

    def token_to_id(self, token: str) -> int | None:
        return self._backend.token_to_id(token)

    def render_chat(self, messages: list[dict], add_generation_prompt: bool = True) -> str:
        """The prompt text for a conversation (see the module docstring for the fallback)."""
        if self.chat_template is None:
            return "\n\n".join(m["content"] for m in messages)
        return render_chat_template(self._template, messages, add_generation_prompt, **self._special_tokens)

    def apply_chat_template(self, messages: list[dict], add_generation_prompt: bool = True) -> list[int]:
        """Prompt ids for a conversation, e.g. [{"role": "user", "content": "Hi"}]."""
        text = self.render_chat(messages, add_generation_prompt)
        # the template writes BOS itself where it wants one; the fallback has no template
        return self.encode(text, add_special_tokens=self.chat_template is None)

    def stream(self, skip_special_tokens: bool = True) -> StreamDecoder:
        return StreamDecoder(self, skip_special_tokens)


class StreamDecoder:
    """Turns token ids, as they arrive, into the text they add, for printing as you go.

    Decoding one token at a time goes wrong twice: a character may be split over
    several byte tokens (its first bytes decode to U+FFFD), and sentencepiece drops
    the space at the start of whatever it decodes. So decode a small window: the
    ids already printed last time (as context) plus the new ones, print only the
    text past the context, and hold the new ids back while they end in a broken
    character.
    """

    def __init__(self, tokenizer: Tokenizer, skip_special_tokens: bool = True) -> None:
        self._tok = tokenizer
        self._skip = skip_special_tokens
        self._ids: list[int] = []
        self._prefix = 0  # start of the context window
        self._read = 0  # ids before this have been printed

    def _decode(self, ids: list[int]) -> str:
        return self._tok.decode(ids, skip_special_tokens=self._skip)

    def push(self, ids: Iterable[int]) -> str:
        """Add new ids; return the text they complete ("" while a character is unfinished)."""
        self._ids.extend(ids)
        return self._emit(final=False)

    def flush(self) -> str:
        """Return whatever is held back (call once at the end)."""
        return self._emit(final=True)

    def _emit(self, final: bool) -> str:
        context = self._decode(self._ids[self._prefix : self._read])
        text = self._decode(self._ids[self._prefix :])
        if len(text) <= len(context) or (text.endswith("\ufffd") and not final):
            return ""
        self._prefix, self._read = self._read, len(self._ids)
        return text[len(context) :]
