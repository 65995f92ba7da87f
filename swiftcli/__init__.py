"""swiftcli: one `swift` command from a model name or checkpoint to inference, serving, export and fine-tuning."""

__version__ = "0.1.0"
