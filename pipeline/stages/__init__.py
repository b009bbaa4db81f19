"""One module per command: each DVC stage (download, prepare, train, publish, evaluate, compare)
and the two that are not stages (predict, export). Each exposes `run(params, ...)`; a stage never
imports another stage."""
