provider "azurerm" {
  features {}
  subscription_id = var.subscription_id
  tenant_id       = var.tenant_id
}

locals {
  prefix = "${var.name}-${var.uid}"
  # Nodes get only the hash; it may be public, as the secret is random.
  init_secret_hash = nonsensitive(sha256(var.init_secret))
  tags = {
    constellation-name = var.name
    constellation-uid  = var.uid
  }

  # Control planes by index; the load balancer forwards to all of them.
  control_planes = [
    for key in sort([for name, n in var.nodes : format("%05d/%s", n.index, name) if n.role == "control-plane"]) :
    split("/", key)[1]
  ]

  # Ports the CLI reaches from outside. The JoinService (30090) is only reachable inside the virtual
  # network (Azure's default rule AllowVnetInBound).
  public_ports = {
    kubernetes   = 6443
    bootstrapper = 9000
    recovery     = 9999
    verify       = 30081
  }

  # Azure requires an administrator credential even though the image runs no provisioning agent that would
  # create the account. Derived from the init secret so that it is unguessable without another provider;
  # the init secret cannot be recovered from it.
  admin_password = "${substr(sha512("constellation azure admin password\n${var.init_secret}"), 0, 40)}-Aa1"
}

data "azurerm_resource_group" "this" {
  name = var.resource_group
}

resource "azurerm_virtual_network" "this" {
  name                = local.prefix
  location            = var.location
  resource_group_name = data.azurerm_resource_group.this.name
  address_space       = [var.node_cidr]
  tags                = local.tags
}

resource "azurerm_subnet" "nodes" {
  name                 = "nodes"
  resource_group_name  = data.azurerm_resource_group.this.name
  virtual_network_name = azurerm_virtual_network.this.name
  address_prefixes     = [var.node_cidr]
}

resource "azurerm_network_security_group" "nodes" {
  name                = local.prefix
  location            = var.location
  resource_group_name = data.azurerm_resource_group.this.name
  tags                = local.tags

  dynamic "security_rule" {
    for_each = local.public_ports
    content {
      name                       = security_rule.key
      priority                   = 100 + index(keys(local.public_ports), security_rule.key)
      direction                  = "Inbound"
      access                     = "Allow"
      protocol                   = "Tcp"
      source_port_range          = "*"
      destination_port_range     = tostring(security_rule.value)
      source_address_prefix      = "*"
      destination_address_prefix = "*"
    }
  }
}

resource "azurerm_subnet_network_security_group_association" "nodes" {
  subnet_id                 = azurerm_subnet.nodes.id
  network_security_group_id = azurerm_network_security_group.nodes.id
}

resource "azurerm_public_ip" "front" {
  name                = "${local.prefix}-lb"
  location            = var.location
  resource_group_name = data.azurerm_resource_group.this.name
  allocation_method   = "Static"
  sku                 = "Standard"
  tags                = local.tags
}

resource "azurerm_lb" "front" {
  name                = local.prefix
  location            = var.location
  resource_group_name = data.azurerm_resource_group.this.name
  sku                 = "Standard"
  tags                = local.tags
  frontend_ip_configuration {
    name                 = "public"
    public_ip_address_id = azurerm_public_ip.front.id
  }
}

resource "azurerm_lb_backend_address_pool" "control_plane" {
  name            = "control-plane"
  loadbalancer_id = azurerm_lb.front.id
}

resource "azurerm_lb_probe" "control_plane" {
  for_each        = local.public_ports
  name            = each.key
  loadbalancer_id = azurerm_lb.front.id
  protocol        = "Tcp"
  port            = each.value
}

resource "azurerm_lb_rule" "control_plane" {
  for_each                       = local.public_ports
  name                           = each.key
  loadbalancer_id                = azurerm_lb.front.id
  protocol                       = "Tcp"
  frontend_port                  = each.value
  backend_port                   = each.value
  frontend_ip_configuration_name = "public"
  backend_address_pool_ids       = [azurerm_lb_backend_address_pool.control_plane.id]
  probe_id                       = azurerm_lb_probe.control_plane[each.key].id
  # The nodes have public addresses of their own for outbound traffic.
  disable_outbound_snat = true
}

resource "azurerm_public_ip" "node" {
  for_each            = var.nodes
  name                = "${local.prefix}-${each.key}"
  location            = var.location
  resource_group_name = data.azurerm_resource_group.this.name
  allocation_method   = "Static"
  sku                 = "Standard"
  zones               = [each.value.zone]
  tags                = local.tags
}

resource "azurerm_network_interface" "node" {
  for_each            = var.nodes
  name                = "${local.prefix}-${each.key}"
  location            = var.location
  resource_group_name = data.azurerm_resource_group.this.name
  tags                = local.tags
  ip_configuration {
    name                          = "primary"
    primary                       = true
    subnet_id                     = azurerm_subnet.nodes.id
    private_ip_address_allocation = "Dynamic"
    public_ip_address_id          = azurerm_public_ip.node[each.key].id
  }
}

resource "azurerm_network_interface_backend_address_pool_association" "control_plane" {
  for_each                = toset(local.control_planes)
  network_interface_id    = azurerm_network_interface.node[each.key].id
  ip_configuration_name   = "primary"
  backend_address_pool_id = azurerm_lb_backend_address_pool.control_plane.id
}

resource "azurerm_linux_virtual_machine" "node" {
  for_each              = var.nodes
  name                  = "${local.prefix}-${each.key}"
  computer_name         = each.key
  location              = var.location
  resource_group_name   = data.azurerm_resource_group.this.name
  size                  = each.value.instance_type
  zone                  = each.value.zone
  network_interface_ids = [azurerm_network_interface.node[each.key].id]
  source_image_id       = var.image

  admin_username                  = "constellation"
  admin_password                  = local.admin_password
  disable_password_authentication = false
  provision_vm_agent              = false
  allow_extension_operations      = false

  # AMD SEV-SNP confidential VM with a vTPM; the VM guest state is encrypted, the OS disk is not (the node
  # encrypts its state disk itself).
  vtpm_enabled        = true
  secure_boot_enabled = var.secure_boot
  os_disk {
    caching                  = "ReadWrite"
    storage_account_type     = "Premium_LRS"
    security_encryption_type = "VMGuestStateOnly"
  }

  identity {
    type         = "UserAssigned"
    identity_ids = [var.user_assigned_identity]
  }

  boot_diagnostics {}

  # The node reads its tags from the instance metadata service.
  tags = merge(local.tags, {
    constellation-node       = each.key
    constellation-role       = each.value.role
    constellation-node-group = each.value.group
    init-secret-hash         = local.init_secret_hash
  })

  lifecycle {
    # `constellation upgrade apply` replaces images node by node; Terraform must not replace every node.
    ignore_changes = [source_image_id]
  }
}

resource "azurerm_managed_disk" "state" {
  for_each             = var.nodes
  name                 = "${local.prefix}-${each.key}-state"
  location             = var.location
  resource_group_name  = data.azurerm_resource_group.this.name
  storage_account_type = "Premium_LRS"
  create_option        = "Empty"
  disk_size_gb         = each.value.state_disk_size_gb
  zone                 = each.value.zone
  tags                 = merge(local.tags, { constellation-node = each.key })
}

resource "azurerm_virtual_machine_data_disk_attachment" "state" {
  for_each           = var.nodes
  managed_disk_id    = azurerm_managed_disk.state[each.key].id
  virtual_machine_id = azurerm_linux_virtual_machine.node[each.key].id
  lun                = 0
  caching            = "ReadWrite"
}
