"""A PDF's text layer, page by page.

The library is pypdf: pure Python (one ``py3-none-any`` wheel, so it installs in the
gateway's offline virtualenv with no compiler and no system library), BSD-licensed,
maintained by an active team with frequent releases, and it reads text without
rendering anything. The alternatives we weighed: PyMuPDF is AGPL and a large binary
wheel; pdfminer.six is slower and adds two dependencies; pdftotext needs poppler.

pypdf reads the text a PDF *has*; it does no OCR. A scanned PDF has no text layer, and
the caller turns :class:`NoTextLayer` into a clear 400 instead of sending the model an
empty document.
"""

from __future__ import annotations

import io
import logging

#: pypdf warns on every quirk of a malformed file; the gateway reports what matters itself
logging.getLogger("pypdf").setLevel(logging.ERROR)


class PdfError(Exception):
    """The PDF cannot be read; the message says why, for the client."""


class NoTextLayer(PdfError):
    """Every page is empty of text: a scan, or pages that are pictures."""

    def __init__(self, pages: int) -> None:
        super().__init__(f"the PDF has no text layer ({pages} page{'s' if pages != 1 else ''} of images or "
                         "scans); this model server reads only a PDF's text: run OCR on it first (e.g. "
                         "`ocrmypdf in.pdf out.pdf`) or send its pages as images")
        self.pages = pages


def extract_pages(data: bytes) -> list[str]:
    """The text of each page (pages without text are empty strings); raises :class:`PdfError`."""
    from pypdf import PdfReader
    from pypdf.errors import PyPdfError

    if not data.lstrip()[:5].startswith(b"%PDF-"):
        raise PdfError("the data is not a PDF (it does not start with %PDF-)")
    try:
        reader = PdfReader(io.BytesIO(data))
        if reader.is_encrypted and not reader.decrypt(""):
            raise PdfError("the PDF is encrypted with a password; send a copy without one")
        pages = [(page.extract_text() or "").strip() for page in reader.pages]
    except PdfError:
        raise
    except (PyPdfError, ValueError, KeyError, TypeError, AttributeError, IndexError, RecursionError,
            NotImplementedError, OSError) as exc:
        # pypdf raises these for damaged files; none of them is the client's PDF "working"
        raise PdfError(f"the PDF cannot be read: {type(exc).__name__}: {str(exc)[:200]}") from exc
    if not pages:
        raise PdfError("the PDF has no pages")
    if not any(pages):
        raise NoTextLayer(len(pages))
    return pages


def pages_as_text(pages: list[str]) -> str:
    """The pages joined with a marker at each boundary (stable text: it becomes part of the prompt)."""
    total = len(pages)
    return "\n\n".join(f"[Page {n} of {total}]\n{text or '(no text on this page)'}"
                       for n, text in enumerate(pages, 1))
