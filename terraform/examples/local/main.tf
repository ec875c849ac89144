# A local Constellation cluster with Terraform alone: the network and the nodes (the project's local
# provider), the measurements of the node image they boot, and the initialized cluster on them. See
# README.md ("Using Terraform") for how to run it offline.

terraform {
  required_version = ">= 1.5.0"
  required_providers {
    constellation = {
      source  = "constellation-go/constellation"
      version = "0.1.0"
    }
  }
}

resource "constellation_local_network" "this" {
  name               = var.name
  bridge_cidr        = var.bridge_cidr
  kubernetes_version = var.kubernetes_version
  services_dir       = var.services_dir
  init_secret        = var.init_secret
}

resource "constellation_local_node" "node" {
  for_each  = { "cp-0" = "control-plane", "worker-0" = "worker" }
  network   = constellation_local_network.this.id
  name      = each.key
  role      = each.value
  index     = each.key == "cp-0" ? 0 : 1
  image_dir = var.image_dir
  # image_dir is the image a new node boots. Once the cluster is initialized, constellation_cluster moves its
  # nodes to a new image (its image_dir), one at a time, drained, while the cluster trusts both images; a
  # node resource restarting every node at once into it is refused.
  lifecycle {
    ignore_changes = [image_dir]
  }
}

# What a node booted from the image shows before it joins (PCR 15 zero), precomputed from the image. For a
# published image, use data "constellation_attestation" with the publisher's signed measurements instead.
data "constellation_image" "nodes" {
  path     = var.image_dir
  platform = "local"
}

resource "constellation_cluster" "this" {
  name               = var.name
  endpoint           = constellation_local_node.node["cp-0"].ip
  init_secret        = var.init_secret
  kubernetes_version = var.kubernetes_version
  component_url      = constellation_local_network.this.component_url
  services_dir       = var.services_dir
  attestation = {
    variant      = data.constellation_image.nodes.variant
    measurements = data.constellation_image.nodes.measurements
    # The CA that certifies every local node's vTPM: a software TPM without its certificate is refused.
    platform_ca_certificate = constellation_local_network.this.platform_ca_certificate
  }
  nodes = [for name, n in constellation_local_node.node : { name = n.name, ip = n.ip, role = n.role }]
  # A new image_dir (with the measurements above, which follow it) rolls the nodes out to that image.
  image_dir = var.image_dir
}
