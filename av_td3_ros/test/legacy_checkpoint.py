"""
A legacy av_td3_system checkpoint, built from the layout in DESIGN §7 (test helper).

The networks are written out here independently of av_td3_ros.networks, so a test comparing the
two catches a mismatch in either.
"""

import numpy as np
import torch
from torch import nn
from torch.nn import functional as F


class _LegacyCNN(nn.Module):
    """DESIGN §7: (conv, LayerNorm, LeakyReLU) x 3, fc 3136 -> 512, LayerNorm, LeakyReLU."""

    def __init__(self):
        super().__init__()
        self.conv1, self.ln1 = nn.Conv2d(4, 32, 8, 4), nn.LayerNorm([32, 20, 20])
        self.conv2, self.ln2 = nn.Conv2d(32, 64, 4, 2), nn.LayerNorm([64, 9, 9])
        self.conv3, self.ln3 = nn.Conv2d(64, 64, 3, 1), nn.LayerNorm([64, 7, 7])
        self.fc, self.ln4 = nn.Linear(3136, 512), nn.LayerNorm(512)

    def forward(self, x):            # x already in [-1, 1]
        x = F.leaky_relu(self.ln1(self.conv1(x)), 0.01)
        x = F.leaky_relu(self.ln2(self.conv2(x)), 0.01)
        x = F.leaky_relu(self.ln3(self.conv3(x)), 0.01)
        return F.leaky_relu(self.ln4(self.fc(x.flatten(1))), 0.01)


class _LegacyMLP(nn.Module):
    def __init__(self, n_in, n_out, hidden=(256, 256)):
        super().__init__()
        self.fc1, self.fc2 = nn.Linear(n_in, hidden[0]), nn.Linear(hidden[0], hidden[1])
        self.fc3 = nn.Linear(hidden[1], n_out)

    def forward(self, x):
        return self.fc3(F.relu(self.fc2(F.relu(self.fc1(x)))))


class _LegacyCritic(nn.Module):
    def __init__(self, state_dim):
        super().__init__()
        self.Q1, self.Q2 = _LegacyMLP(state_dim + 2, 1), _LegacyMLP(state_dim + 2, 1)


def write_legacy_checkpoint(path, state_dim=565, max_action=1.0, total_it=1234):
    """
    Write a legacy av_td3_system checkpoint (plain torch.save dict, DESIGN §7 keys).

    Return a function computing the legacy actor's action for (uint8 stack, vector).
    """
    torch.manual_seed(state_dim)
    actor_cnn, critic_cnn = _LegacyCNN(), _LegacyCNN()
    actor, critic = _LegacyMLP(state_dim, 2), _LegacyCritic(state_dim)
    with torch.no_grad():                    # visible LayerNorm affine parameters
        for module in (actor_cnn, critic_cnn):
            for name, p in module.named_parameters():
                if name.startswith('ln'):
                    p.uniform_(0.5, 1.5)
    actor_opt = torch.optim.Adam(list(actor.parameters()) + list(actor_cnn.parameters()))
    critic_opt = torch.optim.Adam(list(critic.parameters()) + list(critic_cnn.parameters()))
    torch.save({
        'total_it': total_it, 'actor_state_dict': actor.state_dict(),
        'critic_state_dict': critic.state_dict(),
        'actor_optimizer_state_dict': actor_opt.state_dict(),
        'critic_optimizer_state_dict': critic_opt.state_dict(),
        'actor_cnn_state_dict': actor_cnn.state_dict(),
        'critic_cnn_state_dict': critic_cnn.state_dict(),
        'actor_cnn_optimizer_state_dict': None, 'critic_cnn_optimizer_state_dict': None,
        'config': {'algorithm': {'name': 'TD3', 'learning_rate': 3e-4, 'scheduler': None},
                   'training': {'batch_size': 256, 'buffer': [1000000, 'dict']}},
        'use_dict_buffer': True, 'discount': np.float64(0.98), 'tau': 0.005, 'policy_freq': 2,
        'policy_noise': 0.2, 'noise_clip': 0.5, 'max_action': max_action,
        'state_dim': state_dim, 'action_dim': 2,
    }, path)

    def reference(image_u8, vector):
        x = torch.from_numpy(image_u8)[None].float() / 255.0 * 2.0 - 1.0
        with torch.no_grad():
            state = torch.cat([actor_cnn(x), torch.from_numpy(vector)[None]], dim=1)
            return (torch.tanh(actor(state)) * max_action)[0].numpy()
    return reference
