"""``python -m segmenter.bench``: the service benchmark under the name the issues and the
Makefile use; the code is ``segmenter.service_bench`` (``segmenter.ml.bench`` is the engine's)."""

from segmenter.service_bench import main

if __name__ == "__main__":
    main()
