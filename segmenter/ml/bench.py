"""``python -m segmenter.ml.bench``: the engine benchmark under the name the issues and the
Makefile use; the code is ``segmenter.ml.evaluation.engine_bench`` (``segmenter.bench`` is
the service's)."""

from .evaluation.engine_bench import main

if __name__ == "__main__":
    main()
