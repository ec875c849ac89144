output "cluster_endpoint" {
  value       = google_compute_address.front.address
  description = "Address of the external load balancer in front of the control planes."
}

output "in_cluster_endpoint" {
  value       = google_compute_address.front.address
  description = "The Kubernetes API endpoint the nodes use (GCP delivers a backend's own traffic to the load balancer locally)."
}

output "api_server_cert_sans" {
  value = sort(distinct(concat(
    [google_compute_address.front.address],
    [for name in local.control_planes : google_compute_instance.node[name].network_interface[0].access_config[0].nat_ip],
    [for name in local.control_planes : google_compute_instance.node[name].network_interface[0].network_ip],
  )))
  description = "Addresses the API server certificate must be valid for."
}

output "ip_cidr_node" {
  value       = var.node_cidr
  description = "The node network (the subnetwork)."
}

output "nodes" {
  value = {
    for name, i in google_compute_instance.node :
    name => { ip = i.network_interface[0].access_config[0].nat_ip, role = var.nodes[name].role }
  }
  description = "Nodes by name with their external address (the CLI reaches them there) and role."
}
