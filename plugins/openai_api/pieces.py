"""A file on disk decoded a piece at a time: the core's :class:`asrhub.pieces.PieceReader`
(moved there from this plugin so that ``asrhub transcribe`` and file transcription share it)."""

from asrhub.pieces import PieceReader

__all__ = ["PieceReader"]
