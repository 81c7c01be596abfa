-- mod_etc_hosts: resolve s2s targets that /etc/hosts lists from /etc/hosts.
-- Part of the xmppd federation harness (conformance/federation/peers.sh).
--
-- Prosody 0.12 resolves s2s targets through DNS only: its built-in resolver
-- (net.dns) reads the name servers of /etc/resolv.conf and never /etc/hosts,
-- and with lua-unbound installed every *.localhost name is 127.0.0.1
-- (libunbound's built-in "localhost." redirect zone; hosts entries under it are
-- rejected).  This wraps net.adns: for a name listed in the hosts file, SRV
-- lookups (_xmpp-server._tcp.NAME, _xmpps-server._tcp.NAME) find no record, so
-- Prosody falls back to NAME port 5269 as RFC 6120 3.2.2 says, and A/AAAA
-- lookups are answered from the file.  Every other name goes to DNS as before.
-- The file is read at each lookup, so edits take effect without a restart.
-- Load it globally: modules_enabled = { ..., "etc_hosts" }.

local adns = require "net.adns";
local hosts_file = module:get_option_string("etc_hosts_file", "/etc/hosts");

local function addresses(name)
	local f = io.open(hosts_file);
	if not f then return nil; end
	local v4, v6, found = {}, {}, false;
	for line in f:lines() do
		local ip, names = line:gsub("#.*$", ""):match("^%s*(%S+)%s+(.-)%s*$");
		if ip then
			for n in names:gmatch("%S+") do
				if n:lower() == name then
					found = true;
					table.insert(ip:find(":", 1, true) and v6 or v4, ip);
				end
			end
		end
	end
	f:close();
	if found then return v4, v6; end
end

local original_resolver = adns.resolver;

local function wrapped_resolver(...)
	local inner = original_resolver(...);
	local wrapper = {};
	function wrapper:lookup(handler, qname, qtype, qclass)
		local name = tostring(qname):lower():gsub("%.$", "");
		qtype = qtype or "A";
		if qtype == "SRV" or qtype == "TLSA" then
			local target = name:match("^_[^.]+%._tcp%.(.+)$");
			if target and addresses(target) then
				module:log("debug", "%s %s: none (%s lists %s)", qtype, name, hosts_file, target);
				handler({});
				return;
			end
		elseif qtype == "A" or qtype == "AAAA" then
			local v4, v6 = addresses(name);
			if v4 then
				local answer = {};
				for _, ip in ipairs(qtype == "A" and v4 or v6) do
					table.insert(answer, qtype == "A" and { a = ip } or { aaaa = ip });
				end
				module:log("debug", "%s %s: %s (from %s)", qtype, name,
					#answer > 0 and table.concat(qtype == "A" and v4 or v6, " ") or "none", hosts_file);
				handler(answer);
				return;
			end
		end
		return inner:lookup(handler, qname, qtype, qclass);
	end
	return setmetatable(wrapper, { __index = inner });
end

adns.resolver = wrapped_resolver;
module:log("info", "s2s names listed in %s are resolved from it", hosts_file);

function module.unload()
	if adns.resolver == wrapped_resolver then
		adns.resolver = original_resolver;
	end
end
