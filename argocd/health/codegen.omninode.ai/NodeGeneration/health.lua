-- Argo CD health of a NodeGeneration (codegen.omninode.ai/v1alpha1).
-- Healthy: Ready=True for the current metadata.generation. Degraded: Ready=False
-- with a reason only a change of the spec (or of the PRD) clears. Suspended:
-- spec.suspend. Progressing: everything else. Lua 5.1, no libraries.

-- TERMINAL_REASONS in src/controller/node_generation.rs, the analysis failures
-- the controller also stops on (IntelligenceNotConfigured until a restart with a
-- broker), and the Git output's refused pushes (not RepositoryUnreachable,
-- BranchBusy or GitFailed, which pass on a retry).
local terminal = {
  PrdEmpty = true,
  PrdTooLarge = true,
  PrdNoContent = true,
  PrdSourceNotFound = true,
  PrdKeyNotFound = true,
  InvalidSpec = true,
  QualityGateFailed = true,
  RenderFailed = true,
  NodeTooLarge = true,
  ConfigMapKeyCollision = true,
  UnsupportedFileName = true,
  GitOutputNotSupported = true,
  AnalysisFailed = true,
  InvalidServiceName = true,
  InvalidDomain = true,
  TooManyNodes = true,
  AuthenticationFailed = true,
  RemoteRejected = true,
  InvalidMessageTemplate = true,
  InvalidGitSecret = true,
  GitSecretForbidden = true,
  IntelligenceNotConfigured = true,
}

local hs = {}
local generation = nil
if obj.metadata ~= nil then
  generation = obj.metadata.generation
end

if obj.spec ~= nil and obj.spec.suspend == true then
  hs.status = "Suspended"
  hs.message = "spec.suspend is true: the operator does no work on this NodeGeneration"
  return hs
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
