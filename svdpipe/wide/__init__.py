"""Wide steps: one request's UNet call split over P ranks by frames and spatial positions, exact.

The public API, for an actor that holds the UNet and a process group:
- `unet.wide_unet_forward(unet, comm, my_frames, timestep, encoder_hidden_states, added_time_ids, num_frames)`:
  this rank's frames of the prediction; `unet.shard_frames` cuts a rank's frames, `unet.gather_frames` joins them;
- `comm.TorchComm(group)`: the collectives over torch.distributed, counting the bytes each forward sends;
- `splits`: how frames and positions are split (pure); `traffic.forward_bytes`: the bytes, from the shapes (pure);
- `costs`: the projected step time on P GPUs from a one-GPU step (pure).

Submodules import torch lazily where they can; `splits`, `traffic` and `costs` are pure Python.
"""
