"""The application on top of the library: the ``flowtriton`` command line (:mod:`.cli`), the demo
(:mod:`.demo`), attacking a trained checkpoint and writing its report (:mod:`.evaluation`), and the
plots (:mod:`.plots`, needs the ``app`` extra: matplotlib, tqdm). The library (ops, regularizers,
attacks, data, models, train) never imports this package."""
