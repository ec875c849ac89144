terraform {
  required_version = ">= 1.5.0"
  required_providers {
    libvirt = {
      source  = "dmacvicar/libvirt"
      version = "0.7.6"
    }
    constellation = {
      source  = "constellation-go/constellation"
      version = "0.1.0"
    }
  }
}
