provider "aws" {
  region = var.region
  default_tags {
    tags = local.tags
  }
}

locals {
  prefix = "${var.name}-${var.uid}"
  # Nodes get only the hash; it may be public, as the secret is random.
  init_secret_hash = nonsensitive(sha256(var.init_secret))
  tags = {
    constellation-name = var.name
    constellation-uid  = var.uid
  }

  zones = sort(distinct([for n in values(var.nodes) : n.zone]))

  # Control planes by index; the load balancer forwards to all of them.
  control_planes = [
    for key in sort([for name, n in var.nodes : format("%05d/%s", n.index, name) if n.role == "control-plane"]) :
    split("/", key)[1]
  ]

  # Ports the CLI reaches from outside. The JoinService (30090) is only reachable inside the VPC.
  public_ports = {
    kubernetes   = 6443
    bootstrapper = 9000
    recovery     = 9999
    verify       = 30081
  }
  lb_targets = {
    for pair in setproduct(keys(local.public_ports), local.control_planes) :
    "${pair[0]}/${pair[1]}" => { service = pair[0], node = pair[1] }
  }
}

resource "aws_vpc" "this" {
  cidr_block           = var.node_cidr
  enable_dns_support   = true
  enable_dns_hostnames = true
  tags                 = { Name = local.prefix }
}

resource "aws_subnet" "nodes" {
  for_each                = toset(local.zones)
  vpc_id                  = aws_vpc.this.id
  availability_zone       = each.key
  cidr_block              = cidrsubnet(var.node_cidr, 4, index(local.zones, each.key))
  map_public_ip_on_launch = true
  tags                    = { Name = "${local.prefix}-${each.key}" }
}

resource "aws_internet_gateway" "this" {
  vpc_id = aws_vpc.this.id
  tags   = { Name = local.prefix }
}

resource "aws_route_table" "public" {
  vpc_id = aws_vpc.this.id
  route {
    cidr_block = "0.0.0.0/0"
    gateway_id = aws_internet_gateway.this.id
  }
  tags = { Name = local.prefix }
}

resource "aws_route_table_association" "nodes" {
  for_each       = aws_subnet.nodes
  subnet_id      = each.value.id
  route_table_id = aws_route_table.public.id
}

resource "aws_security_group" "nodes" {
  name        = local.prefix
  description = "Constellation nodes of ${local.prefix}"
  vpc_id      = aws_vpc.this.id
  tags        = { Name = local.prefix }
}

resource "aws_vpc_security_group_ingress_rule" "public" {
  for_each          = local.public_ports
  security_group_id = aws_security_group.nodes.id
  description       = "${each.key} from anywhere"
  cidr_ipv4         = "0.0.0.0/0"
  ip_protocol       = "tcp"
  from_port         = each.value
  to_port           = each.value
  tags              = { Name = "${local.prefix}-${each.key}" }
}

# Everything inside the VPC: node to node (JoinService, kubelet, etcd, CNI) and the load balancer, which
# connects to the targets from its own VPC addresses (client IP preservation is off).
resource "aws_vpc_security_group_ingress_rule" "internal" {
  security_group_id = aws_security_group.nodes.id
  description       = "all traffic inside the cluster's VPC"
  cidr_ipv4         = var.node_cidr
  ip_protocol       = "-1"
  tags              = { Name = "${local.prefix}-internal" }
}

resource "aws_vpc_security_group_egress_rule" "all" {
  security_group_id = aws_security_group.nodes.id
  description       = "all outbound traffic"
  cidr_ipv4         = "0.0.0.0/0"
  ip_protocol       = "-1"
  tags              = { Name = "${local.prefix}-egress" }
}

resource "aws_lb" "front" {
  name                             = substr(local.prefix, 0, 32) # at most 32 characters; <name>- is at most 21
  load_balancer_type               = "network"
  internal                         = false
  subnets                          = [for s in aws_subnet.nodes : s.id]
  enable_cross_zone_load_balancing = true
  tags                             = { Name = local.prefix }
}

resource "aws_lb_target_group" "control_plane" {
  for_each    = local.public_ports
  port        = each.value
  protocol    = "TCP"
  target_type = "instance"
  vpc_id      = aws_vpc.this.id
  # Nodes use the load balancer too (in_cluster_endpoint); with the client IP preserved, a node whose
  # connection is forwarded to itself would drop it.
  preserve_client_ip = false
  health_check {
    protocol            = "TCP"
    port                = "traffic-port"
    interval            = 10
    healthy_threshold   = 2
    unhealthy_threshold = 2
  }
  tags = { Name = "${local.prefix}-${each.key}" }
}

resource "aws_lb_listener" "control_plane" {
  for_each          = local.public_ports
  load_balancer_arn = aws_lb.front.arn
  port              = each.value
  protocol          = "TCP"
  default_action {
    type             = "forward"
    target_group_arn = aws_lb_target_group.control_plane[each.key].arn
  }
  tags = { Name = "${local.prefix}-${each.key}" }
}

resource "aws_lb_target_group_attachment" "control_plane" {
  for_each         = local.lb_targets
  target_group_arn = aws_lb_target_group.control_plane[each.value.service].arn
  target_id        = aws_instance.node[each.value.node].id
  port             = local.public_ports[each.value.service]
}

resource "aws_instance" "node" {
  for_each                    = var.nodes
  ami                         = var.image
  instance_type               = each.value.instance_type
  subnet_id                   = aws_subnet.nodes[each.value.zone].id
  vpc_security_group_ids      = [aws_security_group.nodes.id]
  associate_public_ip_address = true
  iam_instance_profile        = each.value.role == "control-plane" ? var.iam_instance_profile_control_plane : var.iam_instance_profile_worker_nodes

  cpu_options {
    amd_sev_snp = "enabled"
  }

  # IMDSv2 only; the node reads its tags (init-secret-hash, role) from the instance metadata.
  metadata_options {
    http_endpoint               = "enabled"
    http_tokens                 = "required"
    http_put_response_hop_limit = 2
    instance_metadata_tags      = "enabled"
  }

  root_block_device {
    volume_type           = "gp3"
    encrypted             = true
    delete_on_termination = true
    tags                  = merge(local.tags, { Name = "${local.prefix}-${each.key}-boot" })
  }

  # The state disk; the node encrypts it with a key from the KeyService on top of EBS encryption.
  ebs_block_device {
    device_name           = "/dev/sdb"
    volume_type           = "gp3"
    volume_size           = each.value.state_disk_size_gb
    encrypted             = true
    delete_on_termination = true
    tags                  = merge(local.tags, { Name = "${local.prefix}-${each.key}-state" })
  }

  tags = {
    Name                     = "${local.prefix}-${each.key}"
    constellation-node       = each.key
    constellation-role       = each.value.role
    constellation-node-group = each.value.group
    init-secret-hash         = local.init_secret_hash
  }

  lifecycle {
    # `constellation upgrade apply` replaces images node by node; Terraform must not replace every node.
    ignore_changes = [ami]
  }
}
