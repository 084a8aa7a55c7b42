"""The bottom layer: files a run is made of (pictures today; CSV and safetensors live in
:mod:`dgm.train` for now). It imports nothing else of dgm."""
