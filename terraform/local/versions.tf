terraform {
  required_version = ">= 1.5.0"
  required_providers {
    constellation = {
      source  = "constellation-go/constellation"
      version = "0.1.0"
    }
  }
}
