"""toy-nbp: a made-up reseller's adapter and emulator, packaged the way a third party would
ship an nbp adapter (tests/providers/outside/test_toy_conformance.py installs it)."""
