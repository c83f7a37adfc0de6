"""The research questions: population statistics (``stats``), CNN embeddings
(``embeddings``), whether clusters of them follow sex or age (``clustering``), and how
to read a sex classifier honestly (``sex``)."""
