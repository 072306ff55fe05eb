"""Serving: the KServe predictor (`predictor`), its wire format (`codec`) and the server that runs a KServe
model on a chosen host with request limits (`server`)."""
