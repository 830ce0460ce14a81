"""Moving weights between our parameter trees and the official / HF PyTorch safetensors layout."""
