"""The gradio side of the demo's defences (``demos/app.py`` builds the page): request decoding that answers every
malformed request with a message, events that are no API endpoint, launch options that close the queue-less paths,
and the removal of uploads at exit."""

from __future__ import annotations

import inspect
import os
import signal
import threading

import gradio as gr

from negguide.cli import demo_security as sec


def error(message: str) -> gr.Error:
    """A gr.Error for the page (no traceback on the server log either: it is the user's input)."""
    try:
        return gr.Error(message, print_exception=False)
    except TypeError:  # gradio releases before print_exception
        return gr.Error(message)


class GuardedBlocks(gr.Blocks):
    """gr.Blocks whose request decoding answers every malformed request with a message (a gr.Error, not gradio's
    ``{"error": null}``) and never reads, probes or fetches a file a client names: file values must be uploads of
    this server (checked on the path's text before gradio looks at the disk)."""

    async def preprocess_data(self, block_fn, inputs, *args, **kwargs):
        if not isinstance(inputs, list) or len(inputs) < len(block_fn.inputs):
            got = len(inputs) if isinstance(inputs, list) else 0
            raise error(
                f"the request has {got} values; this endpoint takes {len(block_fn.inputs)} (see /gradio_api/info)"
            )
        for block, value in zip(block_fn.inputs, inputs):
            if isinstance(block, (gr.Image, gr.File)):
                try:
                    sec.check_upload(value, block.label or "file")
                except sec.Rejected as rejected:
                    raise error(str(rejected)) from None
        try:
            return await super().preprocess_data(block_fn, inputs, *args, **kwargs)
        except gr.Error:
            raise
        except Exception as failure:  # a value gradio cannot decode (a malformed file payload)
            raise error(
                f"the request's values could not be read ({type(failure).__name__}): see /gradio_api/info"
            ) from None


def choice(allow: sec.AllowList, kind: str, label: str) -> gr.Dropdown:
    """A dropdown of the allowed embeddings or LoRAs (labels, never server paths); the bundled one preselected."""
    labels = allow.labels(kind)
    default = next((name for name in labels if name.startswith("bundled")), None)
    return gr.Dropdown(labels, value=default, label=label + " (offered by this server)", scale=3)


def upload(label: str) -> gr.File:
    """An upload box for a .safetensors file (size-capped by the server's max_file_size)."""
    return gr.File(None, label=label, file_types=[".safetensors"], type="filepath", file_count="single", scale=3)


def private(method) -> dict:
    """Keyword arguments that make an event no API endpoint (gradio 6: api_visibility; gradio 5: show_api)."""
    params = inspect.signature(method).parameters
    return {"api_visibility": "private"} if "api_visibility" in params else {"api_name": False, "show_api": False}


def launch_options(demo: gr.Blocks, max_upload_mb: int) -> dict:
    """Uploads capped; no MCP server, run history (it can reach a hub) or monitoring page (those the release has)."""
    options = dict(max_file_size=max_upload_mb << 20, mcp_server=False, run_history=False, enable_monitoring=False)
    accepted = inspect.signature(demo.launch).parameters
    return {k: v for k, v in options.items() if k in accepted}


def stop_on_sigterm() -> None:
    """SIGTERM ends ``block_thread`` as Ctrl+C does (the server closes and its files are removed)."""
    if threading.current_thread() is threading.main_thread():
        signal.signal(signal.SIGTERM, _interrupt)


def _interrupt(signum, frame):
    raise KeyboardInterrupt


def remove_files(demo: gr.Blocks) -> None:
    """Delete the uploads and outputs this app wrote (and their folders, once empty) in gradio's upload folder."""
    root = sec.upload_root()
    for files in getattr(demo, "temp_file_sets", []):
        for path in list(files):
            path = os.path.realpath(str(path))
            if not path.startswith(root + os.sep):
                continue
            try:
                os.remove(path)
                os.rmdir(os.path.dirname(path))  # gradio's per-file folder; kept when not empty
            except OSError:
                pass
