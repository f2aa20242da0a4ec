-- Argo CD health of a GeneratedNode (codegen.omninode.ai/v1alpha1).
-- Healthy: Ready=True for the current metadata.generation (a Deployment rolled
-- out, zero replicas, or spec.deploy.enabled false). Degraded: Ready=False with
-- a reason that needs a change (code missing, rollout past its deadline).
-- Progressing: everything else, e.g. RollingOut. Lua 5.1, no libraries.

-- The Ready=False reasons of src/controller/generated_node.rs other than
-- RollingOut (the operator retries a missing source every 15 s, but only a
-- new ConfigMap or spec clears it).
local terminal = {
  SourceNotFound = true,
  StartScriptMissing = true,
  GitSourceNotSupported = true,
  RuntimeVersionUnsupported = true,
  ProgressDeadlineExceeded = true,
}

local hs = {}
local generation = nil
if obj.metadata ~= nil then
  generation = obj.metadata.generation
end

local status = obj.status
local ready = nil
local observed = nil
if status ~= nil then
  observed = status.observedGeneration
  if status.conditions ~= nil then
    for _, condition in ipairs(status.conditions) do
      if condition.type == "Ready" then
        ready = condition
      end
    end
  end
end
if ready ~= nil and ready.observedGeneration ~= nil then
  observed = ready.observedGeneration
end

if generation ~= nil and observed ~= generation then
  hs.status = "Progressing"
  hs.message = "Waiting for the operator to observe generation " .. tostring(generation)
  return hs
end
if ready == nil then
  hs.status = "Progressing"
  hs.message = "Waiting for the operator to report the Ready condition"
  return hs
end

local message = ready.message
if message == nil or message == "" then
  message = "Ready is " .. tostring(ready.status) .. " (" .. tostring(ready.reason) .. ")"
end
hs.message = message
if ready.status == "True" then
  hs.status = "Healthy"
elseif ready.status == "False" and terminal[ready.reason] then
  hs.status = "Degraded"
else
  hs.status = "Progressing"
end
return hs
