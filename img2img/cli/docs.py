"""`img2img docs`: the user documentation, readable where there is no checkout (a wheel ships it)."""
from __future__ import annotations

from typing import Optional

import typer

from img2img.cli.base import app, console, report_user_errors


@app.command("docs")
@report_user_errors
def docs(name: Optional[str] = typer.Argument(None, help="A document, e.g. troubleshooting, import, serve.")) -> None:
    """Show the documentation: without NAME the list of documents, with NAME one of them (markdown)."""
    from img2img.docs import doc_names, read_doc

    if name is None:
        names = doc_names()
        width = max((len(n) for n in names), default=0)
        for doc, title in names.items():
            console.print(f"{doc:<{width}}  {title}", highlight=False, markup=False)
        console.print("img2img docs NAME shows one.", highlight=False, markup=False)
        return
    text = read_doc(name)
    if console.is_terminal:
        from rich.markdown import Markdown

        console.print(Markdown(text))
    else:
        print(text, end="")
