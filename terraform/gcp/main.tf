provider "google" {
  project        = var.project
  region         = var.region
  credentials    = var.credentials_file
  default_labels = local.labels
}

locals {
  prefix = "${var.name}-${var.uid}"
  # Nodes get only the hash; it may be public, as the secret is random.
  init_secret_hash = nonsensitive(sha256(var.init_secret))
  labels = {
    constellation-name = var.name
    constellation-uid  = var.uid
  }

  # Control planes by index; the load balancer forwards to all of them.
  control_planes = [
    for key in sort([for name, n in var.nodes : format("%05d/%s", n.index, name) if n.role == "control-plane"]) :
    split("/", key)[1]
  ]

  # Ports the CLI reaches from outside. The JoinService (30090) is only reachable inside the subnetwork.
  public_ports = {
    kubernetes   = 6443
    bootstrapper = 9000
    recovery     = 9999
    verify       = 30081
  }

  # The name the node finds its state disk by (/dev/disk/by-id/google-state-disk).
  state_disk_device_name = "state-disk"
}

resource "google_compute_network" "this" {
  name                    = local.prefix
  auto_create_subnetworks = false
}

resource "google_compute_subnetwork" "nodes" {
  name          = local.prefix
  region        = var.region
  network       = google_compute_network.this.id
  ip_cidr_range = var.node_cidr
}

resource "google_compute_firewall" "public" {
  name          = "${local.prefix}-public"
  description   = "Kubernetes API, bootstrapper, recovery and verification service from anywhere"
  network       = google_compute_network.this.id
  direction     = "INGRESS"
  source_ranges = ["0.0.0.0/0"]
  target_tags   = [local.prefix]
  allow {
    protocol = "tcp"
    ports    = [for p in values(local.public_ports) : tostring(p)]
  }
}

resource "google_compute_firewall" "internal" {
  name          = "${local.prefix}-internal"
  description   = "Node to node: JoinService, kubelet, etcd, CNI"
  network       = google_compute_network.this.id
  direction     = "INGRESS"
  source_ranges = [var.node_cidr]
  target_tags   = [local.prefix]
  allow {
    protocol = "tcp"
  }
  allow {
    protocol = "udp"
  }
  allow {
    protocol = "icmp"
  }
}

resource "google_compute_disk" "state" {
  for_each = var.nodes
  name     = "${local.prefix}-${each.key}-state"
  zone     = each.value.zone
  type     = "pd-balanced"
  size     = each.value.state_disk_size_gb
  labels   = { constellation-node = each.key }
}

resource "google_compute_instance" "node" {
  for_each         = var.nodes
  name             = "${local.prefix}-${each.key}"
  zone             = each.value.zone
  machine_type     = each.value.instance_type
  min_cpu_platform = "AMD Milan" # required for SEV-SNP
  tags             = [local.prefix]
  labels = {
    constellation-node       = each.key
    constellation-role       = each.value.role
    constellation-node-group = each.value.group
  }

  confidential_instance_config {
    confidential_instance_type = "SEV_SNP"
  }

  shielded_instance_config {
    enable_secure_boot          = var.secure_boot
    enable_vtpm                 = true
    enable_integrity_monitoring = true
  }

  scheduling {
    # Confidential VMs cannot live-migrate.
    on_host_maintenance = "TERMINATE"
    automatic_restart   = true
  }

  boot_disk {
    auto_delete = true
    initialize_params {
      image = var.image
      type  = "pd-balanced"
    }
  }

  attached_disk {
    source      = google_compute_disk.state[each.key].id
    device_name = local.state_disk_device_name
  }

  network_interface {
    subnetwork = google_compute_subnetwork.nodes.id
    access_config {}
  }

  # Without an email, the project's default compute service account.
  service_account {
    scopes = ["cloud-platform"]
  }

  metadata = {
    init-secret-hash   = local.init_secret_hash
    constellation-uid  = var.uid
    constellation-role = each.value.role
    serial-port-enable = "TRUE"
  }

  lifecycle {
    # `constellation upgrade apply` replaces images node by node; Terraform must not replace every node.
    ignore_changes = [boot_disk[0].initialize_params[0].image]
  }
}

resource "google_compute_address" "front" {
  name         = local.prefix
  region       = var.region
  address_type = "EXTERNAL"
}

resource "google_compute_target_pool" "control_plane" {
  name      = local.prefix
  region    = var.region
  instances = [for name in local.control_planes : "${google_compute_instance.node[name].zone}/${google_compute_instance.node[name].name}"]
}

resource "google_compute_forwarding_rule" "control_plane" {
  for_each              = local.public_ports
  name                  = "${local.prefix}-${each.key}"
  region                = var.region
  ip_address            = google_compute_address.front.address
  ip_protocol           = "TCP"
  port_range            = tostring(each.value)
  load_balancing_scheme = "EXTERNAL"
  target                = google_compute_target_pool.control_plane.id
}
